"""C hazards behave as the kernel's would."""

import pytest

from kvmsim.cmodel import (
    EFAULT,
    ERR_PTR,
    IS_ERR,
    NULL,
    PTR_ERR,
    UNINIT,
    KernelOops,
    OutParam,
    deref,
    errno_name,
)


def test_null_is_not_an_error_pointer() -> None:
    # IS_ERR covers only the top 4095 values; NULL is 0 (kernel-semantics §0)
    assert IS_ERR(NULL) is False
    assert PTR_ERR(NULL) == 0
    assert IS_ERR(ERR_PTR(-EFAULT)) is True
    assert PTR_ERR(ERR_PTR(-EFAULT)) == -EFAULT


def test_uninit_use_oopses_even_in_is_err() -> None:
    with pytest.raises(KernelOops) as e:
        IS_ERR(UNINIT, "IS_ERR(page)")
    assert e.value.kind == "uninit_use"
    with pytest.raises(KernelOops):
        bool(UNINIT)
    with pytest.raises(KernelOops):
        _ = UNINIT == 0


def test_deref_null_and_error_pointer_oops() -> None:
    with pytest.raises(KernelOops) as e:
        deref(NULL, "page_to_pfn(page)")
    assert e.value.kind == "null_deref"
    assert "page_to_pfn(page)" in str(e.value)
    with pytest.raises(KernelOops):
        deref(ERR_PTR(-EFAULT), "page_to_pfn(page)")
    assert deref(0x1234, "x") == 0x1234


def test_out_param_null_write_oopses_and_unwritten_is_uninit() -> None:
    p = OutParam.null("p_page")
    assert not p
    with pytest.raises(KernelOops) as e:
        p.set(NULL)
    assert "*p_page" in str(e.value)
    q = OutParam("pfn")
    assert q
    assert q.get() is UNINIT
    q.set(5)
    assert q.get() == 5


def test_errno_names() -> None:
    assert errno_name(-EFAULT) == "-EFAULT"
    assert errno_name(7) == "7"
