from medagent.cli.main import app

app(prog_name="medagent")
