"""The collapse hook: the indicators as pure functions (`indicators`), the monitor that measures a model against
its baseline and raises alerts (`monitor`), and the eval recording every synthmix eval shares (`recording`)."""
