"""VideoBERT Lab: the package behind the course.

Every public function names the notebook that teaches it. Start with
``vbert_lab.setup`` (used by every notebook) and ``vbert_lab.report.record``
(how notebooks publish the numbers that land in ``summary.json``).
"""

__version__ = "0.1.0"

from .session import Session, setup  # noqa: E402,F401

__all__ = ["Session", "setup", "__version__"]
