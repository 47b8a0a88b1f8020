"""Seeded bugs for the explorer: each drops one guard a correct fault path
keeps.  Registered as extra plugins, they answer ``hva_to_pfn`` before the
selected strategy (pluggy calls the last registered first)."""

from __future__ import annotations

from typing import Any

from kvmsim import hookimpl
from kvmsim.hooktypes import HvaToPfnResult


class EarlyPut:
    """The strategy's answer, but the page reference is dropped before the
    handler installs the entry (the handler later releases a page it no
    longer holds, and between the two the host may free the frame)."""

    def __init__(self, strategy: Any) -> None:
        self.inner = strategy

    @hookimpl
    def hva_to_pfn(self, kvm: Any, request: Any) -> HvaToPfnResult:
        res: HvaToPfnResult = self.inner.hva_to_pfn(kvm=kvm, request=request)
        if res.page is not None and isinstance(res.page, int):
            kvm.phys.put_page(res.page)
        return res
