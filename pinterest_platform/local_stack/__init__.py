"""The embedded local stack: a single-node KRaft Kafka broker and a moto server (S3 + Kinesis) on loopback.

`LocalStack(state_dir).up()` starts them (idempotently) and records endpoints in `<state_dir>/stack/state.json`,
where the local resources find them; `down()` stops exactly the processes it started; `status()` health-checks.
`stack_command` is the `pinterest-platform stack up|down|status` entry point."""

from pinterest_platform.local_stack.command import stack_command
from pinterest_platform.local_stack.stack import LocalStack

__all__ = ["LocalStack", "stack_command"]
