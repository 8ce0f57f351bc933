"""The one error type of the Docker side. Its message reaches the user through
`docker network create` / `docker run`, so it says what was wrong and what is valid."""


class DriverError(Exception):
    """A request Docker should fail, with a message for the person who typed it."""

    status = 400
