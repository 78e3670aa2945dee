-- Demo update script: TeamManager database 7.2 -> 8.0.
GO
CREATE SCHEMA [Reporting2];
GO
CREATE TABLE [Reporting2].[CallFacts] (
    [CallId] bigint NOT NULL PRIMARY KEY,
    [QueueName] nvarchar(200) NOT NULL,
    [StartedAt] datetime2(3) NOT NULL
);
GO
INSERT INTO [dbo].[DatabaseVersion] ([Version], [AppliedAt]) VALUES (N'8.0', SYSUTCDATETIME());
GO
