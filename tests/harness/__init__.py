"""What every test suite here shares: waiting on conditions, the daemon subprocess, test keys."""
