-- First start of the docker-compose PostgreSQL: the console's own database lives beside the
-- managed databases (DATABASE_URL in docker-compose.yml).
CREATE DATABASE console;
