"""``hashing serve``: the query service on Ray Serve over the champion's code shards: ``hashing.serving_app``.

    hashing serve --config configs/demo.yaml [--partitions 2] [--port 8000] [--poll-seconds 30]
                  [--duration 600]

Resolves ``search.model`` at ``search.version``, else ``search.alias`` (default ``champion``), splits its
database code parts over ``--partitions`` Partition deployments (each its own exact MIH index,
``--partition-replicas`` replicas), puts the ``Search`` HTTP ingress in front on ``--host``:``--port``
(default 127.0.0.1:8000), prints the URL and example requests, and serves until Ctrl-C (or ``--duration``
seconds). Every ``--poll-seconds`` it looks at the registry again and, when the alias has moved to a
version whose codes are complete, moves the service to it without dropping requests
(``hashing.serving_follow``); ``--poll-seconds 0`` pins the version resolved at start. Ray:
``ray.address`` / ``RAY_ADDRESS``, else a local instance.

Only light imports at module level: ``hashing.cli`` imports ``serve_parser`` from here for ``--help``.
"""

import argparse
import sys

from hashing.cli_args import config_parser

DEFAULT_PORT = 8000
DEFAULT_POLL_SECONDS = 30.0


def serve_parser() -> argparse.ArgumentParser:
    p = config_parser("Serve top-k Hamming search over HTTP (Ray Serve) from the champion's code shards: "
                      "GET /search?key=KEY&k=K, POST /search/image?k=K (the image file as the body), "
                      "GET /search/text?q=TAG,TAG&k=K (multimodal models).")
    p.prog = "hashing serve"
    p.add_argument("--partitions", type=int, default=2, metavar="N",
                   help="Partition deployments the database code parts are split over (default 2)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    p.add_argument("--cpus-per-replica", type=float, default=0.25, metavar="C",
                   help="Ray CPUs each replica requests (default 0.25)")
    p.add_argument("--partition-replicas", type=int, default=1, metavar="R",
                   help="Serve replicas per partition (default 1; 2 keep answering while one restarts)")
    p.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS, metavar="S",
                   help=f"look at the registry every S seconds and follow the alias when it moves to a fully "
                        f"encoded version (default {DEFAULT_POLL_SECONDS:g}; 0: pin the version resolved at "
                        f"start)")
    p.add_argument("--max-upload-bytes", type=int, default=None, metavar="B",
                   help="largest image upload accepted (default 8 MiB)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: serve until Ctrl-C)")
    return p


def run_cli(config, args: argparse.Namespace) -> int:
    """Start the service, print where it answers, wait; Serve (and a Ray started here) shut down after."""
    import time

    import ray
    from ray import serve

    from hashing.errors import InputError
    from hashing.ray_session import init_ray
    from hashing.serving_app import MAX_UPLOAD_BYTES, plan_service, start_service
    from hashing.serving_follow import Follower

    if args.partition_replicas < 1:
        raise InputError(f"--partition-replicas must be >= 1, got {args.partition_replicas}")
    if args.poll_seconds < 0:
        raise InputError(f"--poll-seconds must be >= 0 (0: pinned), got {args.poll_seconds}")
    plan = plan_service(config, args.partitions, num_cpus=args.cpus_per_replica,
                        max_upload_bytes=args.max_upload_bytes or MAX_UPLOAD_BYTES,
                        partition_replicas=args.partition_replicas)
    started = init_ray(config.ray.address, config.ray.num_cpus)
    try:
        following = args.poll_seconds > 0
        url = start_service(plan, host=args.host, port=args.port, following=following)
        follower = Follower(config, plan) if following else None
        sizes = [len(p) for p in plan.partitions]
        print(f"serving models:/{plan.model_name}/{plan.model_version} ({plan.codes_uri}/{plan.split}, "
              f"parts per partition {sizes}) at {url}", flush=True)
        print(f"  web page: {url}/", flush=True)
        print(f"  curl '{url}/search?key=KEY&k=10'", flush=True)
        print(f"  curl --data-binary @image.png '{url}/search/image?k=10'", flush=True)
        print(f"  following the registry every {args.poll_seconds:g} s" if following else
              "  pinned to this version (--poll-seconds 0)", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        next_poll = time.monotonic() + args.poll_seconds
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
                if follower is not None and time.monotonic() >= next_poll:
                    if follower.poll():
                        print(f"now serving models:/{follower.plan.model_name}/{follower.plan.model_version} "
                              f"at {url}", flush=True)
                    next_poll = time.monotonic() + args.poll_seconds
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    from hashing.cli import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
