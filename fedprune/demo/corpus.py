"""The demo corpus: docstrings of the Python standard library, grouped by topic and split into shards.

Docstrings are read with :mod:`ast` from the sources shipped with the running interpreter (nothing is
imported), in a fixed order, so the same interpreter always yields the same corpus. Each module belongs to
one :class:`Topic` through a fixed table of module-name prefixes. Documents (one docstring each) are laid
out topic by topic and cut into equally sized contiguous shards, so every shard is dominated by one or two
topics: the participants' data are non-IID. The last documents of each shard are held out for evaluation.
"""

from __future__ import annotations

import ast
import enum
import functools
import hashlib
import logging
import re
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Separates documents in every text file we write. Docstrings never contain it: runs of blank lines are
# collapsed to one when a docstring is normalised.
DOCUMENT_SEPARATOR = "\n\n\n"

# Path components that exclude a file: test suites, the IDE, demos, vendored wheels, third-party packages.
_EXCLUDED_PARTS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "turtledemo",
        "lib2to3",
        "ensurepip",
        "pydoc_data",
        "site-packages",
        "dist-packages",
        "__pycache__",
    }
)


class Topic(enum.Enum):
    """A subject area of the standard library; the unit of non-IID-ness between participants."""

    TEXT = "text-strings"
    NUMBERS = "numbers-time"
    DATA_FORMATS = "data-formats-compression"
    FILES_OS = "files-os"
    CONCURRENCY = "concurrency"
    NETWORK = "networking-internet"
    MARKUP_EMAIL = "markup-email"
    LANGUAGE = "language-runtime"
    TESTING = "testing-debugging-logging"
    PACKAGING_CLI = "packaging-cli"
    GUI = "gui-terminal"


# Topic -> the top-level modules and packages filed under it. Others fall back to LANGUAGE (logged).
_MODULES_OF_TOPIC: dict[Topic, str] = {
    Topic.TEXT: (
        "string re sre_compile sre_constants sre_parse textwrap difflib codecs encodings stringprep "
        "locale gettext shlex pprint reprlib unicodedata readline rlcompleter"
    ),
    Topic.NUMBERS: (
        "_pydecimal decimal fractions statistics random numbers datetime calendar zoneinfo heapq "
        "bisect colorsys graphlib _strptime"
    ),
    Topic.DATA_FORMATS: (
        "json csv pickle pickletools _compat_pickle copyreg plistlib tomllib configparser zipfile "
        "tarfile gzip bz2 lzma _compression base64 quopri uu xdrlib chunk wave aifc sunau sndhdr "
        "imghdr hashlib hmac secrets struct shelve dbm sqlite3 zipapp netrc"
    ),
    Topic.FILES_OS: (
        "os pathlib shutil tempfile glob fnmatch filecmp fileinput io _pyio stat posixpath ntpath "
        "genericpath subprocess _bootsubprocess platform sysconfig site _sitebuiltins getpass pty "
        "tty signal linecache _osx_support _aix_support pipes crypt nturl2path"
    ),
    Topic.CONCURRENCY: "asyncio threading _threading_local multiprocessing concurrent queue sched contextvars",
    Topic.NETWORK: (
        "http urllib socket socketserver ssl smtplib smtpd imaplib poplib nntplib ftplib telnetlib "
        "xmlrpc wsgiref ipaddress webbrowser selectors asyncore asynchat cgi cgitb mimetypes uuid"
    ),
    Topic.MARKUP_EMAIL: "email html _markupbase xml mailbox mailcap",
    Topic.LANGUAGE: (
        "typing inspect dis ast tokenize token keyword opcode symtable pyclbr importlib pkgutil "
        "modulefinder runpy py_compile compileall zipimport imp dataclasses enum abc _py_abc "
        "functools collections _collections_abc contextlib types copy weakref _weakrefset operator "
        "__future__ ctypes codeop"
    ),
    Topic.TESTING: (
        "unittest doctest pdb bdb trace profile pstats cProfile timeit tracemalloc traceback "
        "warnings logging code cmd tabnanny"
    ),
    Topic.PACKAGING_CLI: "distutils argparse optparse getopt venv pydoc",
    Topic.GUI: "tkinter turtle curses",
}


@dataclass(frozen=True)
class Document:
    """One docstring of the corpus, with the module it came from and that module's topic."""

    module: str
    topic: Topic
    text: str


@dataclass(frozen=True)
class Shard:
    """One participant's share of the corpus: training documents and the held-out tail after them."""

    index: int
    train: tuple[Document, ...]
    heldout: tuple[Document, ...]

    def train_text(self) -> str:
        """Return the training documents joined by :data:`DOCUMENT_SEPARATOR`."""
        return join_documents(self.train)

    def heldout_text(self) -> str:
        """Return the held-out documents joined by :data:`DOCUMENT_SEPARATOR`."""
        return join_documents(self.heldout)

    def topic_chars(self) -> dict[str, int]:
        """Return characters of training text per topic value, largest first."""
        counts: dict[str, int] = {}
        for document in self.train:
            counts[document.topic.value] = counts.get(document.topic.value, 0) + len(document.text)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def join_documents(documents: Sequence[Document]) -> str:
    """Return the texts of ``documents`` joined by :data:`DOCUMENT_SEPARATOR`."""
    return DOCUMENT_SEPARATOR.join(document.text for document in documents)


def stdlib_root() -> Path:
    """Return the directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files(root: Path | None = None) -> list[Path]:
    """Return the stdlib ``.py`` files that may feed the corpus, sorted by relative path."""
    root = stdlib_root() if root is None else root
    files = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if any(part in _EXCLUDED_PARTS or part.startswith("test_") for part in parts):
            continue
        if parts[0].startswith(("config-", "_sysconfigdata")):
            continue
        files.append(path)
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def sources_sha256(files: Sequence[Path], root: Path | None = None) -> str:
    """Return the SHA-256 over the relative paths and bytes of ``files`` (the corpus's provenance)."""
    root = stdlib_root() if root is None else root
    digest = hashlib.sha256()
    for path in files:
        relative = path.relative_to(root).as_posix().encode()
        content = path.read_bytes()
        digest.update(len(relative).to_bytes(8, "big") + relative)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def module_name(path: Path, root: Path) -> str:
    """Return the dotted module name of stdlib file ``path`` (``email/mime/text.py`` -> ``email.mime.text``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _topic_table() -> dict[str, Topic]:
    """Return top-level module name -> topic, inverted from :data:`_MODULES_OF_TOPIC`."""
    return {name: topic for topic, names in _MODULES_OF_TOPIC.items() for name in names.split()}


def topic_of(module: str) -> Topic:
    """Return the topic of dotted module name ``module`` (by its top-level package)."""
    topic = _topic_table().get(module.split(".")[0])
    if topic is None:
        logger.debug("module %s has no topic entry; filed under %s", module, Topic.LANGUAGE.value)
        return Topic.LANGUAGE
    return topic


def _normalise_docstring(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _docstrings(tree: ast.AST) -> Iterator[str]:
    """Yield the docstrings of a module, its classes and functions in source order."""
    if isinstance(tree, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        docstring = ast.get_docstring(tree, clean=True)
        if docstring:
            yield docstring
    for child in ast.iter_child_nodes(tree):
        yield from _docstrings(child)


def extract_documents(
    files: Sequence[Path], *, root: Path | None = None, min_chars: int = 0
) -> list[Document]:
    """Return the deduplicated docstrings of ``files`` in file and source order.

    A docstring shorter than ``min_chars`` or identical to an earlier one is dropped, so no held-out
    document also occurs in training text. Files that do not parse are skipped with a warning.
    """
    root = stdlib_root() if root is None else root
    seen: set[str] = set()
    documents: list[Document] = []
    for path in files:
        name = module_name(path, root)
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError) as error:
            logger.warning("skipping %s: %s", name, error)
            continue
        topic = topic_of(name)
        for raw in _docstrings(tree):
            text = _normalise_docstring(raw)
            if len(text) < min_chars or text in seen:
                continue
            seen.add(text)
            documents.append(Document(module=name, topic=topic, text=text))
    return documents


def order_by_topic(documents: Sequence[Document]) -> list[Document]:
    """Return ``documents`` grouped by topic (in :class:`Topic` order), keeping their order within a topic."""
    rank = {topic: position for position, topic in enumerate(Topic)}
    return sorted(documents, key=lambda document: rank[document.topic])  # sorted() is stable


def split_into_shards(
    documents: Sequence[Document], *, n_shards: int, heldout_fraction: float
) -> list[Shard]:
    """Return ``n_shards`` contiguous, equally sized (in characters) shards of topic-ordered documents.

    Shard ``i`` takes the documents that start in the ``i``-th ``1/n_shards`` of the text; its last
    documents, about ``heldout_fraction`` of its characters and at least one document, are held out.
    Raises ``ValueError`` when some shard would get fewer than two documents.
    """
    ordered = order_by_topic(documents)
    total_chars = sum(len(document.text) for document in ordered)
    buckets: list[list[Document]] = [[] for _ in range(n_shards)]
    offset = 0
    for document in ordered:
        buckets[min(n_shards - 1, offset * n_shards // max(total_chars, 1))].append(document)
        offset += len(document.text)
    shards = []
    for index, bucket in enumerate(buckets):
        if len(bucket) < 2:
            raise ValueError(
                f"corpus too small: shard {index} of {n_shards} has {len(bucket)} documents (need 2); "
                "use fewer shards or a smaller module_stride"
            )
        target = heldout_fraction * sum(len(document.text) for document in bucket)
        split = len(bucket) - 1
        heldout_chars = len(bucket[split].text)
        while split > 1 and heldout_chars + len(bucket[split - 1].text) <= target:
            split -= 1
            heldout_chars += len(bucket[split].text)
        shards.append(Shard(index=index, train=tuple(bucket[:split]), heldout=tuple(bucket[split:])))
    return shards
