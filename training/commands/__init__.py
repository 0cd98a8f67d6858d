"""One module per `python -m training` subcommand (NAME, HELP, EXAMPLES, add_arguments, run)."""
