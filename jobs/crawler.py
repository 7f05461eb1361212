"""A web crawler as a rank pipeline: URLs spread over the ranks, each fetching with threads.

The crawl goes breadth-first, one wave per link depth. Each wave's URLs are cut
into batches that stream through :func:`hpcpar.pipeline`, one stage per rank:
stage ``r`` fetches, with a thread pool, the URLs of the batch that belong to
rank ``r`` (by a hash of the URL), and parses their links. Root merges the
finished batches into ``{url: [links]}`` and builds the next wave from links
not seen before. ``None`` marks a page that could not be fetched.

It only follows links on the start URL's host and port, only fetches loopback
addresses (127.0.0.1, ::1, localhost) or the address root serves its demo site
on (``--bind``), and stops after ``--max-pages`` pages: it is a demonstration,
not a tool for the open web.

    mpiexec -n 2 python jobs/crawler.py --serve-demo            # serve a generated site and crawl it
    mpiexec -n 2 python jobs/crawler.py http://127.0.0.1:8000/  # crawl a local server
    hpcpar run -n 4 --hosts h1,h2 jobs/crawler.py --serve-demo --bind h1   # ranks on other hosts
"""

from __future__ import annotations

import argparse
import http.server
import ipaddress
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from html.parser import HTMLParser

import hpcpar
from hpcpar.launch.options import job_args, parse_checked

LOOPBACK_NAMES = {"localhost"}


def parser() -> argparse.ArgumentParser:
    """The job's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", nargs="?", help="start URL (loopback only)")
    p.add_argument("--serve-demo", action="store_true",
                   help="serve a generated site on 127.0.0.1 from root, crawl it and check the result")
    p.add_argument("--bind", metavar="ADDRESS", default="127.0.0.1",
                   help="with --serve-demo: the address (or host name) root serves the site on; "
                   "ranks on other hosts need root's address on their network (default 127.0.0.1)")
    p.add_argument("--pages", type=int, default=300, help="pages of the generated site (default 300)")
    p.add_argument("--max-pages", type=int, default=10000, help="stop after this many pages")
    p.add_argument("--threads", type=int, default=8, help="fetching threads per rank (default 8)")
    p.add_argument("--batch", type=int, default=16, help="URLs per pipeline item (default 16)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    return p


#: Output-file options, checked before the job starts (directory exists and is writable).
OUTPUTS: tuple[str, ...] = ()


def check(args: argparse.Namespace) -> str | None:
    """The first problem with the options, or None (the same on every rank)."""
    if args.pages < 1:
        return f"--pages must be >= 1, got {args.pages}"
    if args.max_pages < 1:
        return f"--max-pages must be >= 1, got {args.max_pages}"
    if args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    if args.batch < 1:
        return f"--batch must be >= 1, got {args.batch}"
    if not args.timeout > 0:
        return f"--timeout must be > 0 seconds, got {args.timeout:g}"
    if not args.serve_demo and not args.url:
        return "give a start URL or --serve-demo"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked (without the output-path checks of :func:`main`)."""
    return parse_checked(parser(), check, argv)


# ---------------------------------------------------------------- the generated site
def make_site(pages: int, seed: int = 1) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A site of ``pages`` HTML pages with links between them: ``(path -> HTML, path -> link targets)``.

    Every page is reachable from ``/`` (page ``k`` links to pages ``2k+1`` and
    ``2k+2``), each has a few more links (written relative or absolute in the
    HTML, some with fragments), some link to pages that do not exist and some
    to other hosts. The second dict is the known truth a crawl must find.
    """
    rng = random.Random(seed)
    paths = ["/"] + [f"/p/{k}.html" for k in range(1, pages)]
    site, targets = {}, {}
    for k, path in enumerate(paths):
        links = []
        if k > 0:
            links.append(paths[rng.randrange(k)])  # a way back up
        for j in (2 * k + 1, 2 * k + 2):  # a binary tree: everything is reachable from /
            if j < pages:
                links.append(paths[j])
        for _ in range(rng.randrange(0, 5)):
            links.append(paths[rng.randrange(pages)])
        if rng.random() < 0.1:
            links.append(f"/missing/{k}.html")
        if rng.random() < 0.1:
            links.append(f"http://example.com/{k}")
        if rng.random() < 0.2 and k > 0:
            links.append(f"{paths[rng.randrange(pages)]}#section")
        anchors = "".join(f'<li><a href="{_relative(path, h)}">link</a></li>' for h in links)
        site[path] = f"<html><head><title>page {k}</title></head><body><ul>{anchors}</ul></body></html>"
        targets[path] = links
    return site, targets


def _relative(page: str, target: str) -> str:
    if target.startswith("http") or not target.startswith("/p/") or not page.startswith("/p/"):
        return target
    return target[len("/p/"):]  # relative to /p/


def expected_graph(targets: dict[str, list[str]], base: str) -> dict[str, list[str] | None]:
    """The graph a correct crawl from ``base`` finds, from the generator's link targets (no HTML parsing)."""
    site = urllib.parse.urlsplit(base).netloc
    graph: dict[str, list[str] | None] = {}
    todo = [urllib.parse.urljoin(base, "/")]
    while todo:
        url = todo.pop()
        if url in graph:
            continue
        path = urllib.parse.urlsplit(url).path
        if path not in targets:
            graph[url] = None
            continue
        absolute = {urllib.parse.urldefrag(urllib.parse.urljoin(base, t))[0] for t in targets[path]}
        graph[url] = sorted(u for u in absolute if urllib.parse.urlsplit(u).netloc == site)
        todo += graph[url]
    return graph


class _Handler(http.server.BaseHTTPRequestHandler):
    site: dict[str, str] = {}

    def do_GET(self):
        body = self.site.get(urllib.parse.urlsplit(self.path).path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops connections from many fetching threads


def serve(site: dict[str, str], address: str = "127.0.0.1") -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``site`` on ``address`` (a free port) from a daemon thread; (server, base URL).

    Call ``server.shutdown()`` when done.
    """
    handler = type("SiteHandler", (_Handler,), {"site": site})
    server = _Server((address, 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="crawler-demo-site").start()
    host = f"[{address}]" if ":" in address else address
    return server, f"http://{host}:{server.server_address[1]}/"


# ---------------------------------------------------------------- crawling
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            for name, value in attrs:
                if name == "href" and value:
                    self.hrefs.append(value)


def links_of(url: str, html: str, base: str) -> list[str]:
    """The distinct on-site links of a page, absolute, without fragments, sorted."""
    parser = _Links()
    parser.feed(html)
    site = urllib.parse.urlsplit(base).netloc
    out = set()
    for href in parser.hrefs:
        absolute = urllib.parse.urldefrag(urllib.parse.urljoin(url, href))[0]
        parts = urllib.parse.urlsplit(absolute)
        if parts.scheme in ("http", "https") and parts.netloc == site:
            out.add(absolute)
    return sorted(out)


def check_loopback(url: str, allowed: frozenset[str] = frozenset()) -> None:
    """Refuse any URL whose host is neither a loopback address nor in ``allowed``."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host in LOOPBACK_NAMES
    if not ok and host not in allowed:
        raise ValueError(f"crawler: only loopback URLs are fetched, got {url!r} (host {host!r})")


def fetch(url: str, timeout: float, allowed: frozenset[str] = frozenset()) -> str | None:
    """The page's text, or None when it cannot be fetched (HTTP error, refused...)."""
    check_loopback(url, allowed)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None


def owner(url: str, size: int) -> int:
    """The rank that fetches ``url``: a stable hash, the same on every rank."""
    return zlib.crc32(url.encode()) % size


def make_stage(rank: int, size: int, pool: hpcpar.LocalPool, base: str,
               timeout: float, allowed: frozenset[str] = frozenset()) -> Callable[[dict], dict]:
    """Pipeline stage ``rank``: fetch and parse this rank's URLs of a batch ({url: links or None})."""
    def stage(batch: dict) -> dict:
        mine = [u for u in batch if owner(u, size) == rank]
        pages = pool.map(lambda u: fetch(u, timeout, allowed), mine)
        for url, html in zip(mine, pages):
            batch[url] = None if html is None else links_of(url, html, base)
        return batch
    return stage


def crawl(ctx: hpcpar.Context, start: str | None, threads: int = 8, batch: int = 16,
          max_pages: int = 10000, timeout: float = 10.0, served: bool = False) -> dict | None:
    """Crawl from root's ``start`` URL. **Collective**.

    ``served``: root serves ``start`` itself (its demo site), so its host may be fetched
    even when it is not a loopback address (ranks on other hosts reach root's address).

    Returns ``{url: sorted links or None}`` on root, None elsewhere.
    """
    start, served = ctx.bcast((start, served) if ctx.is_root else None)
    allowed = frozenset([urllib.parse.urlsplit(start).hostname or ""]) if served else frozenset()
    check_loopback(start, allowed)
    base = urllib.parse.urljoin(start, "/")
    graph: dict[str, list[str] | None] = {}
    frontier = [urllib.parse.urldefrag(start)[0]] if ctx.is_root else None
    with hpcpar.local_pool(threads, kind="thread") as pool:
        stages = [make_stage(r, ctx.size, pool, base, timeout, allowed) for r in range(ctx.size)]
        while True:
            more = ctx.bcast(bool(frontier) if ctx.is_root else None)
            if not more:
                break
            items = None
            if ctx.is_root:
                room = max(0, max_pages - len(graph))
                frontier = frontier[:room]
                items = [dict.fromkeys(frontier[i:i + batch]) for i in range(0, len(frontier), batch)]
            done = hpcpar.pipeline(ctx, stages, items)
            if ctx.is_root:
                for part in done:
                    graph.update(part)
                seen, nxt = set(graph), []
                for part in done:
                    for links in part.values():
                        for u in links or ():
                            if u not in seen:
                                seen.add(u)
                                nxt.append(u)
                frontier = nxt if len(graph) < max_pages else []
    return graph if ctx.is_root else None


def main(ctx: hpcpar.Context, argv: list[str] | None = None) -> dict | None:
    args = job_args(ctx, parser(), argv, check, OUTPUTS)
    if not args.serve_demo and not args.url:
        raise SystemExit("crawler: give a start URL or --serve-demo")
    server = targets = None
    start = args.url
    if args.serve_demo and ctx.is_root:
        site, targets = make_site(args.pages)
        server, start = serve(site, args.bind)
    try:
        t0 = time.perf_counter()
        graph = crawl(ctx, start, args.threads, args.batch, args.max_pages, args.timeout,
                      served=args.serve_demo)
        elapsed = time.perf_counter() - t0
    finally:
        if server is not None:
            server.shutdown()
    if ctx.is_root:
        fetched = sum(1 for v in graph.values() if v is not None)
        links = sum(len(v) for v in graph.values() if v)
        print(f"crawler: {len(graph)} URLs ({fetched} fetched, {len(graph) - fetched} failed), "
              f"{links} links, on {ctx.size} ranks in {elapsed:.2f} s")
        if targets is not None:
            if graph != expected_graph(targets, start):
                raise SystemExit("crawler: the crawled graph differs from the generated site's")
            print("crawler: the link graph matches the generated site")
    return graph


if __name__ == "__main__":
    hpcpar.run(main)
