"""`python -m postyard`: the `postyard` command, for processes that start one another."""

from postyard.cli import app

app()
