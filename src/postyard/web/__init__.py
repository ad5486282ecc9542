"""The server-rendered admin web UI (Jinja2) and the shared template environment.

Kept free of imports here: `postyard.api.unsubscribe` loads `postyard.web.templating`,
and the UI's routers load the API's context, so importing the package must not
pull in either side.
"""
