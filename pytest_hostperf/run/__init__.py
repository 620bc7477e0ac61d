"""The controller's run loop, without pytest: environments, measuring, judging.

- :mod:`.pool`: the environment pool (start, identify, restart, stop agents);
- :mod:`.plan`: the measurement plan (interleaved rounds, references, confirmation);
- :mod:`.judge`: records and verdicts (baseline lookup, ratio to native, acceptance);
- :mod:`.answers`: what an agent may answer, validated;
- :mod:`.session`: one session's records, its baselines saved, its report data;
- :mod:`.workdir`: the session's private temporary directory, swept after a killed run.
"""
