"""One module per ``rtnstream`` sub-command: ``configure(parser)`` adds its options, ``run(args)`` runs it."""
