"""Integrations with other evaluation frameworks (optional extras): :mod:`.lmms_eval`."""
