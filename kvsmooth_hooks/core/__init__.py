"""The runtime core: config -> plan -> session over sites, scorers and adapters, the probe and the pure tensor code.

Nothing here imports the applications beside it (CLI, demo, runner, benchmarks, eval, plots).
"""
