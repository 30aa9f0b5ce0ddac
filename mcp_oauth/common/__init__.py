"""What two components truly share: scope strings, text safe to echo in an OAuth error or a
header, the SQL engine setup, the ASGI request-body reader and the users.yaml file reader.

Nothing here knows about one component; every component may import it."""
