"""``hashing serve``: the query service on Ray Serve over the champion's code shards: ``hashing.serving_app``.

    hashing serve --config configs/demo.yaml [--partitions 2] [--port 8000] [--duration 600]

Pins ``search.model`` at ``search.version``, else ``search.alias`` (default ``champion``), splits its
database code parts over ``--partitions`` Partition deployments (each its own exact MIH index), puts the
``Search`` HTTP ingress in front on ``--host``:``--port`` (default 127.0.0.1:8000), prints the URL and
example requests, and serves until Ctrl-C (or ``--duration`` seconds). Ray: ``ray.address`` /
``RAY_ADDRESS``, else a local instance.

Only light imports at module level: ``hashing.cli`` imports ``serve_parser`` from here for ``--help``.
"""

import argparse
import sys

from hashing.cli_args import config_parser

DEFAULT_PORT = 8000


def serve_parser() -> argparse.ArgumentParser:
    p = config_parser("Serve top-k Hamming search over HTTP (Ray Serve) from the champion's code shards: "
                      "GET /search?key=KEY&k=K, POST /search/image?k=K (the image file as the body).")
    p.prog = "hashing serve"
    p.add_argument("--partitions", type=int, default=2, metavar="N",
                   help="Partition deployments the database code parts are split over (default 2)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    p.add_argument("--cpus-per-replica", type=float, default=0.25, metavar="C",
                   help="Ray CPUs each replica requests (default 0.25)")
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

    from hashing.ray_session import init_ray
    from hashing.serving_app import MAX_UPLOAD_BYTES, plan_service, start_service

    plan = plan_service(config, args.partitions, num_cpus=args.cpus_per_replica,
                        max_upload_bytes=args.max_upload_bytes or MAX_UPLOAD_BYTES)
    started = init_ray(config.ray.address, config.ray.num_cpus)
    try:
        url = start_service(plan, host=args.host, port=args.port)
        sizes = [len(p) for p in plan.partitions]
        print(f"serving models:/{plan.model_name}/{plan.model_version} ({plan.codes_uri}/{plan.split}, "
              f"parts per partition {sizes}) at {url}", flush=True)
        print(f"  curl '{url}/search?key=KEY&k=10'", flush=True)
        print(f"  curl --data-binary @image.png '{url}/search/image?k=10'", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
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
