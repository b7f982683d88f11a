"""Each integration without its framework: MissingDependency with the exact install line."""

import pytest

CHECK = """
import sys
for name in {hidden!r}:
    sys.modules[name] = None  # as if not installed
import notebook_exp.integrations  # the descriptors never import a framework
assert not any(sys.modules.get(name) for name in {hidden!r})
from notebook_exp.exceptions import MissingDependency
try:
    import notebook_exp.integrations.{module}
except MissingDependency as exc:
    assert isinstance(exc, ImportError)
    print("MISSING", exc.package, exc.extra, "|", exc)
else:
    print("IMPORTED")
"""


@pytest.mark.parametrize("module, hidden, extra", [
    ("lightning", ("lightning", "pytorch_lightning"), "lightning"),
    ("transformers", ("transformers",), "transformers"),
    ("keras", ("keras",), "keras"),
])
def test_a_missing_framework_says_how_to_install_it(run_python, module, hidden, extra):
    child = run_python(CHECK.format(module=module, hidden=hidden))
    assert f"MISSING {extra} {extra} | " in child.stdout
    assert f"pip install 'notebook-exp[{extra}]'" in child.stdout


def test_the_descriptors_import_no_framework(run_python):
    child = run_python("import sys, notebook_exp.integrations as i, notebook_exp; notebook_exp.plugins; "
                       "print(sorted(m for m in ('lightning', 'transformers', 'keras', 'torch') if m in sys.modules))")
    assert child.stdout.strip() == "[]"
