"""``python -m avengers_graph``: the ``avengers`` command line."""

from avengers_graph.app.cli import app

if __name__ == "__main__":
    app()
