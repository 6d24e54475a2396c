"""Write backends/models/data/tokenizer_corpus.txt, the text the tiny models' tokenizer is trained on.

The corpus is the docstrings of a fixed list of Python standard-library modules (Python Software
Foundation License, which allows redistribution) plus a few lines in other languages written for
this project. Run with Python 3.11 to reproduce the committed file exactly.
"""
import importlib
import inspect
import pathlib

MODULES = [
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "glob", "gzip", "hashlib",
    "heapq", "html", "http.client", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "logging",
    "mailbox", "math", "mimetypes", "multiprocessing", "numbers", "operator", "os", "pathlib", "pickle",
    "pprint", "queue", "random", "re", "sched", "secrets", "shlex", "shutil", "smtplib", "socket", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time",
    "timeit", "tokenize", "trace", "turtle", "typing", "unittest", "urllib.parse", "uuid", "wave", "weakref",
    "xml.dom.minidom", "zipfile", "zoneinfo",
]

EXTRA = """\
The quick brown fox jumps over the lazy dog. What is the capital of France? Paris is the capital of France.
Translate to German: good morning. Guten Morgen! Wie geht es dir? Mir geht es gut, danke.
Bonjour, comment allez-vous ? Très bien, merci. Où est la gare ?
¿Dónde está la biblioteca? La biblioteca está cerca del parque. Gracias por tu ayuda.
Привет! Как дела? Это пример текста на русском языке. Модель отвечает на вопросы.
こんにちは。今日はいい天気ですね。これは日本語の文です。
你好，世界。今天天气很好。这是一个中文句子。
Describe the image. The picture shows a cat sitting on a red chair next to a window.
Listen to the audio and write down what is said. The speaker says hello and counts to ten.
One, two, three, four, five, six, seven, eight, nine, ten. 1 + 1 = 2. 12 * 12 = 144.
"""


def main() -> None:
    out = []
    for name in MODULES:
        mod = importlib.import_module(name)
        for _, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj) if (inspect.isfunction(obj) or inspect.isclass(obj)) else None
            if doc and getattr(obj, "__module__", None) == mod.__name__:
                out.append(doc)
        if mod.__doc__:
            out.insert(0, inspect.cleandoc(mod.__doc__))
    text = EXTRA * 20 + "\n".join(out)
    path = pathlib.Path(__file__).resolve().parents[1] / "backends" / "models" / "data" / "tokenizer_corpus.txt"
    path.write_text(text, encoding="utf-8")
    print(path, len(text), "characters")


if __name__ == "__main__":
    main()
