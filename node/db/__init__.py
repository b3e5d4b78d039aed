"""Database adapter: tables, engine, unit of work, repositories and the job claim."""
