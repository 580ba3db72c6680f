"""What every process (web, worker, beat, Flower, migrations) sets up at start: its settings from
the environment, connections that notice a silent peer, structured logs, Prometheus's
multiprocess folder."""
