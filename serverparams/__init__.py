"""The managed PostgreSQL server: lifecycle, parameters, validation, apply, audit."""
