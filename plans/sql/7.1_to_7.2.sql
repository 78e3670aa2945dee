-- Demo update script: TeamManager database 7.1 -> 7.2.
GO
ALTER TABLE [dbo].[AgentSkillHistory] ADD [Source] nvarchar(50) NULL;
GO
/* A comment that mentions
GO
does not split the batch. */
UPDATE [dbo].[AgentSkillHistory] SET [Source] = N'migrated' WHERE [Source] IS NULL;
GO
INSERT INTO [dbo].[DatabaseVersion] ([Version], [AppliedAt]) VALUES (N'7.2', SYSUTCDATETIME());
GO
