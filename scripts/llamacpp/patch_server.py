"""The one change paritybench makes to llama.cpp's server before building it (scripts/ensure_llamacpp_env.sh).

llama-server holds back a token whose text ends inside a UTF-8 character (a byte-fallback piece of an
emoji, of a rare script, or of a random model's output) until a later token completes the character,
and in doing so drops that token's probabilities (`n_probs`, the log-probs of every API route) and,
when streaming, its id: a client sees fewer ids and log-probs than tokens were generated. The patch
keeps the held-back token's probabilities and sends its id with empty text; its text still goes out
with the token that completes the character. Nothing the model computes changes.

    python patch_server.py LLAMA_CPP_SOURCE_DIR
"""

import sys
from pathlib import Path

ORIGINAL = """        if (incomplete) {
            slot.has_next_token = true;
        }
"""
PATCHED = """        if (incomplete) {
            slot.has_next_token = true;
            // paritybench: a token that ends inside a UTF-8 character keeps its probabilities, and its
            // id reaches a stream; its text is sent with the token that completes the character
            result.text_to_send = "";
            slot.add_token(result);
            if (slot.task->params.stream) {
                send_partial_response(slot, result, false);
            }
        }
"""

path = Path(sys.argv[1]) / "tools" / "server" / "server-context.cpp"
text = path.read_text()
if text.count(ORIGINAL) != 1:
    sys.exit(f"{path}: the code this patch changes is not there once (another llama.cpp version?)")
path.write_text(text.replace(ORIGINAL, PATCHED))
