from replicate.cli import app

app()
