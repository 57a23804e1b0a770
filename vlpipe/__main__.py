"""``python -m vlpipe``: the same command line as the ``vlpipe`` script."""

from .cli import app

app(prog_name="vlpipe")
