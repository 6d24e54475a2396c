"""Write tests/data/tokenizer_check_corpus.txt: the lines on which the tokenizer rebuilt from a GGUF
must give the same ids as transformers' GGUF tokenizer (tests/test_real_model.py).

Each line is one text; "\\n" inside a line stands for a newline, "\\t" for a tab (the file stays one
text per line). Sources, all redistributable:
- English: lines of backends/models/data/tokenizer_corpus.txt (Python standard-library docstrings,
  Python Software Foundation License);
- Russian: the project's own seed guide (docs of this project), embedded below as a few sentences,
  plus generated sentences;
- code: Python standard-library source lines (PSF License), with their indentation (whitespace
  runs), some re-indented with tabs;
- digits, whitespace runs, emoji (ZWJ sequences, skin tones, flags), rare scripts (random words
  from Unicode blocks, astral planes included), Gemma's markup pieces: generated from a fixed seed.
Run with Python 3.11 to reproduce the committed file exactly.
"""

import inspect
import pathlib
import random

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "tokenizer_check_corpus.txt"

RUSSIAN = """\
Это руководство показывает, как подключить модель Gemma 3n через vLLM к агентному фреймворку.
Сервер vLLM предоставляет API, совместимый с OpenAI: маршруты /v1/chat/completions и /v1/completions.
Модель загружается один раз, после чего обслуживает запросы нескольких агентов одновременно.
Столица России — Москва, а самый северный город-миллионер — Санкт-Петербург.
В 1812 году Наполеон вошёл в Москву; пожар уничтожил три четверти города.
Съешь же ещё этих мягких французских булок, да выпей чаю.
Температура кипения воды на уровне моря составляет 100 градусов Цельсия.
Грамматика: «кошка», «кошки», «кошке», «кошку», «кошкой», «о кошке».
Ёжик в тумане — мультфильм Юрия Норштейна 1975 года.
Пример кода: print("Привет, мир!") выводит строку на экран."""

WORDS_RU = ("модель сервер запрос ответ токен память скорость язык текст число время память агент "
            "проверка сравнение результат ошибка файл строка поле значение").split()
WORDS_EN = ("model server request answer token memory speed language text number time agent check "
            "comparison result error file line field value the of and to in is that for").split()

SCRIPTS = {  # name -> (first, last) code point of a block's letters
    "georgian": (0x10D0, 0x10FA), "armenian": (0x0531, 0x0556), "ethiopic": (0x1200, 0x135A),
    "cherokee": (0x13A0, 0x13F4), "tifinagh": (0x2D30, 0x2D67), "runic": (0x16A0, 0x16EA),
    "ogham": (0x1681, 0x169A), "devanagari": (0x0905, 0x0939), "tamil": (0x0B85, 0x0BB9),
    "thai": (0x0E01, 0x0E2E), "khmer": (0x1780, 0x17A2), "tibetan": (0x0F40, 0x0F6C),
    "mongolian": (0x1820, 0x1877), "hangul": (0xAC00, 0xD7A3), "cjk": (0x4E00, 0x9FFF),
    "arabic": (0x0627, 0x064A), "hebrew": (0x05D0, 0x05EA), "syriac": (0x0710, 0x072F),
    "nko": (0x07CA, 0x07EA), "greek": (0x03B1, 0x03C9), "gothic": (0x10330, 0x1034A),
    "linear-b": (0x10000, 0x1000B), "cuneiform": (0x12000, 0x12399), "old-italic": (0x10300, 0x1031E),
    "math-bold": (0x1D400, 0x1D433), "hieroglyphs": (0x13000, 0x1342E), "bengali": (0x0985, 0x09B9),
    "sinhala": (0x0D85, 0x0DC6), "canadian": (0x1401, 0x166C), "yi": (0xA000, 0xA48C),
}
EMOJI = ["😀", "😂", "🥲", "🤖", "🧠", "🚀", "🔥", "✅", "❌", "❤️", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈",
         "🇫🇷", "🇷🇺", "🇯🇵", "🐈‍⬛", "🧑🏿‍🔬", "☕", "🌍", "🎉", "💡", "⚠️", "🔢", "🫠", "🪐", "🦀"]
MARKUP = ["<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n", "<table><tr><td>1</td></tr></table>",
          "<h1>Title</h1>", "<b>bold</b> and <i>italic</i>", "<code>x = 1</code>", "<start_of_image>",
          "[multimodal]", "<blockquote>quote</blockquote>", "<ul><li>a</li><li>b</li></ul>", "<mask>"]
CODE_MODULES = ["textwrap", "json.decoder", "csv", "fractions", "bisect", "heapq", "shlex", "difflib", "string",
                "dataclasses", "calendar", "ipaddress"]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def lines() -> list[str]:
    rng = random.Random(31)
    out: list[str] = []
    english = [ln for ln in (ROOT / "backends/models/data/tokenizer_corpus.txt").read_text().splitlines() if ln.strip()]
    out += english[:: max(1, len(english) // 500)][:500]
    out += RUSSIAN.splitlines()
    for _ in range(190):
        words = rng.choices(WORDS_RU, k=rng.randint(3, 12))
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ": да, нет.", " — 42."]))
    code: list[str] = []
    for name in CODE_MODULES:
        mod = __import__(name, fromlist=["_"])
        code += [ln for ln in inspect.getsource(mod).splitlines() if ln.strip()]
    picked = code[:: max(1, len(code) // 450)][:450]
    out += picked
    out += [ln.replace("    ", "\t") for ln in picked[::9]]  # tab-indented
    out += ["\n".join(picked[i:i + 4]) for i in range(0, 200, 4)]  # several lines as one text
    for _ in range(200):
        kind = rng.randrange(5)
        if kind == 0:
            out.append(str(rng.randrange(10 ** rng.randint(1, 30))))
        elif kind == 1:
            out.append(f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 9)}f} + {rng.randint(0, 999)} = ?")
        elif kind == 2:
            out.append(f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                       f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}")
        elif kind == 3:
            out.append(f"+{rng.randint(1, 99)} ({rng.randint(100, 999)}) {rng.randint(100, 999)}-{rng.randint(0, 9999):04d}")
        else:
            out.append(" ".join(str(rng.randint(0, 10 ** 4)) for _ in range(rng.randint(2, 9))))
    for _ in range(200):
        parts = []
        for _ in range(rng.randint(1, 6)):
            parts.append(rng.choice(WORDS_EN + WORDS_RU))
            parts.append(rng.choice([" " * rng.randint(1, 40), "\t" * rng.randint(1, 5), " \t ", "\n" * rng.randint(1, 4),
                                     "\n" + " " * rng.randint(1, 12), "  \n\n  "]))
        if rng.random() < 0.3:
            parts.insert(0, " " * rng.randint(1, 33))
        out.append("".join(parts))
    for _ in range(150):
        out.append(" ".join(rng.choice(EMOJI) * rng.randint(1, 3) if rng.random() < 0.5 else rng.choice(WORDS_EN)
                            for _ in range(rng.randint(2, 8))))
    for _ in range(330):
        lo, hi = SCRIPTS[rng.choice(sorted(SCRIPTS))]
        words = ["".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 7))]
        out.append(" ".join(words) + rng.choice(["", ".", " 2026", " (test)", "?"]))
    for _ in range(60):
        out.append(rng.choice(MARKUP) + " " + " ".join(rng.choices(WORDS_EN, k=rng.randint(1, 5))))
    return out


def main() -> None:
    text = [_escape(t) for t in lines()]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(text) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(text)} lines")


if __name__ == "__main__":
    main()
