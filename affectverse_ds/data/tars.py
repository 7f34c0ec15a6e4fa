"""Reading shard tars with every member bounded before it is read: webdataset's ``tarfile_to_samples``
with one change, the member's declared size checked against the shard contract's limit for its extension
(:func:`schema.member_limit`).

A tar header states each member's size, and a sparse member (GNU ``S``) can declare gigabytes while
occupying a few KB on disk: webdataset reads the whole declared size into memory (a 256 KB shard whose
``.flac`` reads as 6 GB). Here such a member is never read; it reaches the sample as an
:class:`schema.OversizeMember`, which :func:`schema.check_sample` reports with the sample's key, so the
loader skips and counts that sample and ``verify_shards`` lists it like any other problem.
"""
from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from webdataset.filters import pipelinefilter
from webdataset.handlers import reraise_exception
from webdataset.tariterators import base_plus_ext, group_by_keys, url_opener

from affectverse_ds.data import schema

_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own: tar members named __x__ are not sample members


def _members(stream, url: str, handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """(fname, data) of one opened shard, each member's declared size checked before its bytes are read."""
    tar = tarfile.open(fileobj=stream, mode="r|*")
    for info in tar:
        try:
            if not info.isreg() or info.name is None or _SKIP_META.match(info.name):
                continue
            _key, ext = base_plus_ext(info.name)
            limit = schema.member_limit(ext or "")
            if info.size > limit:  # sparse or not, never read: the sample check names it with the key
                data: Any = schema.OversizeMember(info.size, limit)
            else:
                data = tar.extractfile(info).read(limit + 1)
            yield {"fname": info.name, "data": data, "__url__": url}
            tar.members = []  # a streamed tar keeps every TarInfo otherwise
        except Exception as exn:  # noqa: BLE001  (the caller's handler decides, as in webdataset)
            if exn.args:
                exn.args = (f"{exn.args[0]} @ {url}",) + exn.args[1:]
            if handler(exn):
                continue
            break


def _expand(sources: Iterable[dict[str, Any]], handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    for source in sources:
        try:
            yield from _members(source["stream"], source["url"], handler)
            yield {}  # end of shard: samples of two shards are never merged (webdataset's eof marker)
        except Exception as exn:  # noqa: BLE001
            exn.args = exn.args + (source.get("url"),)
            if not handler(exn):
                break


def _tar_samples(src: Iterable[dict[str, Any]], handler: Callable[[Exception], bool] = reraise_exception):
    return group_by_keys(_expand(url_opener(src, handler=handler), handler), handler=handler)


tar_samples = pipelinefilter(_tar_samples)  # tar_samples(handler=...) is a pipeline stage, like wds.tarfile_to_samples
