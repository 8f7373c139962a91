"""Write a tiny random-weight llama-architecture model as a GGUF file that llama.cpp loads.

    python -m tests.tiny_gguf /tmp/tiny.gguf          # or: write_tiny_gguf(path)

What llama.cpp needs to load a ``llama`` model, and what this file gives it:
- ``general.architecture = "llama"`` and the ``llama.*`` hyper-parameters: context length,
  embedding length, block count, feed-forward length, head counts, RMS-norm epsilon;
- the tensors ``token_embd``, ``output_norm``, ``output`` and, per block ``blk.N``,
  ``attn_norm``, ``attn_q``, ``attn_k``, ``attn_v``, ``attn_output``, ``ffn_norm``,
  ``ffn_gate``, ``ffn_up``, ``ffn_down`` (norms in F32, matrices in F16);
- a SentencePiece-style tokenizer (``tokenizer.ggml.model = "llama"``): tokens, scores and
  token types, with ``<unk>``/``<s>``/``</s>`` at 0/1/2 and the 256 byte tokens ``<0x00>`` …
  ``<0xFF>``. Any text tokenizes: pieces found in the vocabulary merge by score, every other
  character falls back to its UTF-8 bytes (llama.cpp looks a byte token up with ``.at()``, so
  all 256 must be present, and ``<0x0A>`` is the newline token it requires).

numpy arrays are given to gguf-py in row-major (rows, cols) order; it writes the ggml shape
reversed, so ``token_embd`` of numpy shape (n_vocab, n_embd) has ggml ``ne = [n_embd, n_vocab]``.

The words it writes are meaningless (random weights). A fixed seed makes the file, and so the
model's greedy output, the same on every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SPACE = "\u2581"  # SentencePiece's word-boundary mark, which llama.cpp puts for spaces

# A few common words: their prefixes are added too, since SentencePiece merges pairwise
# ("▁l" + "e" -> "▁le"), so every intermediate piece must itself be a token.
WORDS = (
    "le la les de des du un une et en est que qui dans pour par sur au aux il elle "
    "the of and to in is that for on with as by Asie Conférence Thaïlande membre "
    "paragraphe document question réponse passage"
).split()
CHARS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    ".,;:!?'\"()[]-/%«»’éèêëàâîïôûùüçÉÈÀÇœ"
)


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types (gguf.TokenType values) of the tiny tokenizer."""
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    scores = [0.0, 0.0, 0.0]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(TokenType.BYTE)
    seen = set(tokens)

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            scores.append(score)
            types.append(TokenType.NORMAL)

    add(SPACE, -1.0)
    for ch in CHARS:
        add(ch, -2.0)
    for rank, word in enumerate(WORDS):
        piece = SPACE + word
        for n in range(2, len(piece) + 1):  # longer pieces score higher: they merge first
            add(piece[:n], float(n) - rank * 1e-3)
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(
    path: str | Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 4096,
    seed: int = 0,
    plain_output: bool = True,
) -> Path:
    """Write the model to ``path`` and return it. Sizes are small by default (~0.3 MB).

    ``plain_output``: the output rows of the control and byte tokens are zero, so their logit
    is 0 while the ordinary pieces' logits spread around it: with the usual sampling (low
    temperature, top-k) the model writes only ordinary pieces, never ``</s>``. A generation
    then always runs to ``max_tokens`` and its text is never empty (nor invalid UTF-8), which
    makes the tests that stream from it deterministic."""
    import gguf

    if n_embd % n_head or n_head % n_head_kv or (n_embd // n_head) % 2:
        raise ValueError("n_embd must split into n_head even-sized heads, n_head into n_head_kv")
    path = Path(path)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    n_embd_kv = head_dim * n_head_kv
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)

    writer.add_tensor("token_embd.weight", matrix(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", norm())
    output = matrix(n_vocab, n_embd)
    if plain_output:
        output[[i for i, t in enumerate(types) if t != int(gguf.TokenType.NORMAL)]] = 0
    writer.add_tensor("output.weight", output)
    for i in range(n_layer):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", norm())
        writer.add_tensor(f"{blk}.attn_q.weight", matrix(n_embd, n_embd))
        writer.add_tensor(f"{blk}.attn_k.weight", matrix(n_embd_kv, n_embd))
        writer.add_tensor(f"{blk}.attn_v.weight", matrix(n_embd_kv, n_embd))
        writer.add_tensor(f"{blk}.attn_output.weight", matrix(n_embd, n_embd))
        writer.add_tensor(f"{blk}.ffn_norm.weight", norm())
        writer.add_tensor(f"{blk}.ffn_gate.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"{blk}.ffn_up.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"{blk}.ffn_down.weight", matrix(n_embd, n_ff))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-ff", type=int, default=128)
    args = parser.parse_args(argv)
    out = write_tiny_gguf(args.path, n_embd=args.n_embd, n_layer=args.n_layer, n_ff=args.n_ff)
    print(f"{out} ({out.stat().st_size} bytes, {len(vocabulary()[0])} tokens)")


if __name__ == "__main__":
    main()
