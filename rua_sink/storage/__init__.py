"""PostgreSQL: every SQL statement, the schema's migrations, the embedded server."""
