"""What every skinflint service shares: settings base, broker factory, telemetry, runner, errors."""
