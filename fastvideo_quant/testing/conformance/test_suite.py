"""The whole suite for the method named by ``--fvq-method`` (what ``fvq check NAME`` runs).

Named ``test_*`` so ``--pyargs fastvideo_quant.testing.conformance`` collects it;
plugin tests import the mixins from the package instead, so this class never
runs there.
"""

from __future__ import annotations

import pytest

from fastvideo_quant.testing.conformance import ConformanceTests


class TestConformance(ConformanceTests):
    """The class attributes come from ``--fvq-method`` / ``--fvq-config``; everything else is the default."""

    @pytest.fixture(scope="class")
    @classmethod
    def fvq_method(cls, request: pytest.FixtureRequest) -> str:
        name = request.config.getoption("--fvq-method", default=None)
        if not name:  # (the pytest plugin refuses such a session before any test runs; without it, fail here)
            from fastvideo_quant.testing.pytest_plugin import missing_method_message

            pytest.fail(missing_method_message(1) + " (with pytest's plugin autoload off, also pass "
                        "-p fastvideo_quant.testing.pytest_plugin)", pytrace=False)
        from fastvideo_quant.testing.conformance.fixtures import SETTABLE
        from fastvideo_quant.testing.pytest_plugin import fvq_config_option, fvq_set_options

        request.cls.config = fvq_config_option(request.config)
        for attr, value in fvq_set_options(request.config, SETTABLE).items():
            setattr(request.cls, attr, value)
        return name
