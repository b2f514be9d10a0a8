"""``agora bench``'s machinery: what it measures (scenarios), against what (raw), and how.

- :mod:`cli.benchmarks.measure`: timed loops, interleaved rounds, figures (no sockets);
- :mod:`cli.benchmarks.raw`: the raw baselines (plain pyzmq, plain UDP), same shapes;
- :mod:`cli.benchmarks.lab`: temp directory, child processes, enrolment, clean-up;
- :mod:`cli.benchmarks.setup`: the processes and agents the scenarios share;
- :mod:`cli.benchmarks.scenarios`: the scenarios themselves;
- :mod:`cli.benchmarks.run`: running a selection of them into one report.
"""
