"""Graft Studio: `python app.py [--manifest PATH] [--zoo-profile full|ci] [--host 127.0.0.1] [--port 7860]
[--auth user:pass] [--device auto] [--allow-dir DIR ...] [--backend local|URL]`. Without --manifest, the offline demo zoo is used:
when it is not built yet, the page opens at once and the zoo is built by a background process
(graft_ui/zoo/background.py), its progress shown in the app, which takes it when it is ready."""

import argparse
import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", help="manifest YAML (or folder with manifest.yaml); default: the demo zoo")
    p.add_argument("--zoo-profile", default=os.environ.get("GRAFT_ZOO_PROFILE", "full"), choices=["full", "ci"])
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--auth", default=os.environ.get("GRAFT_AUTH"), help="user:password required to open the app")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--work-dir", help="where fused variants and exports go (default ./runs/studio)")
    p.add_argument("--votes", help="arena vote store: SQLite path or database URL")
    p.add_argument("--arena-rate", default=None,
                   help="arena per-client limits, e.g. 'votes=30/min,battles=20/min,votes=1000/day' (the default), "
                        "'off', or with ',loopback' to limit this machine's own address too; env GRAFT_ARENA_RATE")
    p.add_argument("--allow-dir", action="append", metavar="DIR",
                   help="a folder whose models, manifests and datasets users may load (repeatable); default: the "
                        "demo zoo folder and the Hugging Face cache. The work dir and the --manifest's folders are "
                        "always allowed; any other server path is refused")
    p.add_argument("--no-warm-up", action="store_true",
                   help="do not load the base, experts and kernels at startup (graft_ui/warmup.py)")
    p.add_argument("--wait-for-zoo", action="store_true",
                   help="build the demo zoo before serving (the former behaviour) instead of in the background")
    p.add_argument("--backend", default="local",
                   help="local (default), or an OpenAI-compatible server URL (e.g. vLLM http://host:8000/v1) "
                        "that answers every LoRA expert (sets the manifest's server: endpoint)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from graft_ui.logs import setup_logging

    setup_logging(logging.INFO)  # user values in log lines are shortened
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    if args.auth and (len(auth) != 2 or not all(auth)):
        raise SystemExit("--auth must be user:password")
    build = zoo = None
    if not args.manifest:
        from graft_ui.zoo import ensure_zoo
        from graft_ui.zoo.background import ZooBuild

        if args.wait_for_zoo:
            ensure_zoo(args.zoo_profile)
        build = ZooBuild(args.zoo_profile)
        build.start()  # first, before the heavy imports: the page comes up while it trains
        zoo = str(build.manifest)
    from graft_ui.ui.app import build_app, launch_kwargs, make_context

    ctx = make_context(args.manifest, device=args.device, work_dir=args.work_dir, votes=args.votes,
                       zoo_manifest=zoo, allow_dirs=args.allow_dir, backend=args.backend,
                       arena_rate=args.arena_rate, zoo_build=build)
    warm = None
    if ctx.pending_zoo is not None:  # the zoo is warmed up when it is taken, unless told not to
        ctx.pending_zoo.warm_up = not args.no_warm_up
    elif not args.no_warm_up:  # overlaps the UI build; done before the app reports ready (see warmup.py)
        from graft_ui.warmup import start_warm_up

        warm = start_warm_up(ctx.studio)
    from graft_ui.ui.app import exposure_warning

    if warning := exposure_warning(args.host, auth):
        logging.getLogger("graft_ui").warning("%s", warning)
    app = build_app(ctx)
    if warm is not None:
        warm.join()
    app.launch(**launch_kwargs(host=args.host, port=args.port, auth=auth))


if __name__ == "__main__":
    main()
