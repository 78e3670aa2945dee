-- Demo update script: TeamManager database 7.0 -> 7.1.
-- Stands in for the vendor's update; the engine runs it batch by batch
-- (sqlcmd GO rules) in one transaction with its upshift.schema_history row.
-- Every update script ends by recording the version it brings the database to.
GO
CREATE TABLE [dbo].[AgentSkillHistory] (
    [Id] int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    [AgentId] int NOT NULL,
    [Skill] nvarchar(100) NOT NULL,
    [ChangedAt] datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME()
);
GO
CREATE INDEX [IX_AgentSkillHistory_AgentId] ON [dbo].[AgentSkillHistory] ([AgentId]);
GO
INSERT INTO [dbo].[DatabaseVersion] ([Version], [AppliedAt]) VALUES (N'7.1', SYSUTCDATETIME());
GO
