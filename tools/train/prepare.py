"""Step 1 of training the default model (CPU, seconds): the tokenizer and the text encoder.

    python3 tools/train/prepare.py --seed 1 --out .train/prep

Writes:
  tokenizer/spiece.model         SentencePiece BPE model trained on every caption of
                                 the grammar (shapes.py), case-folding (nmt_nfkc_cf),
                                 ids pad 0, eos 1, bos 2, unk 3 as umT5
  text_encoder/config.json       a small umT5 (transformers UMT5Config fields)
  text_encoder/model.safetensors its weights, random from the seed: train.py trains them
                                 with the DiT (or keeps them, --text-encoder frozen)
  captions.json                  every caption with its token ids (+ </s>), and the empty
                                 caption (the negative prompt) last

Needs the sentencepiece Python module (Debian: python3-sentencepiece); the GPU step
(train.py) then needs only torch.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402
import st  # noqa: E402
import wan_torch as wt  # noqa: E402

T5_CONFIG = wt.load_arch()["t5"]  # configs/shapes-t2v.json; vocab_size comes from the tokenizer


def train_tokenizer(out_dir, seed, vocab):
    import sentencepiece as spm
    os.makedirs(out_dir, exist_ok=True)
    corpus = os.path.join(out_dir, "corpus.txt")
    with open(corpus, "w") as f:
        for c in shapes.CAPTION_TEXT:
            f.write(c + "\n")
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(out_dir, "spiece"), vocab_size=vocab,
        model_type="bpe", hard_vocab_limit=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        character_coverage=1.0, normalization_rule_name="nmt_nfkc_cf", num_threads=1,
        minloglevel=2)
    os.remove(corpus)
    os.remove(os.path.join(out_dir, "spiece.vocab"))
    return spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "spiece.model"))


def random_t5(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    m = wt.UMT5Encoder(cfg)
    with torch.no_grad():
        for name, p in m.hf_state_dict().items():
            if "layer_norm" in name:
                p.fill_(1.0)
            elif name.endswith("relative_attention_bias.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name in ("shared.weight", "encoder.embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=wt.load_arch()["tokenizer"]["vocab_size"])
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sp = train_tokenizer(os.path.join(a.out, "tokenizer"), a.seed, a.vocab)
    cfg = dict(T5_CONFIG, vocab_size=sp.get_piece_size())
    t5 = random_t5(cfg, a.seed * 7 + 3)
    os.makedirs(os.path.join(a.out, "text_encoder"), exist_ok=True)
    with open(os.path.join(a.out, "text_encoder", "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    sd = {k: v for k, v in t5.hf_state_dict().items() if k != "encoder.embed_tokens.weight"}
    st.save(os.path.join(a.out, "text_encoder", "model.safetensors"), sd,
            {"format": "pt", "producer": "mogagen tools/train/prepare.py", "seed": a.seed})
    ids = []
    longest = 0
    for c in shapes.CAPTION_TEXT + [""]:
        t = sp.encode(" ".join(c.split())) + [1]
        longest = max(longest, len(t))
        ids.append(t[:a.text_len])
    with open(os.path.join(a.out, "captions.json"), "w") as f:
        json.dump({"text_len": a.text_len, "captions": shapes.CAPTION_TEXT + [""], "ids": ids}, f)
    print(f"tokenizer: {sp.get_piece_size()} pieces; {len(ids)} captions, longest {longest} tokens; "
          f"umT5 d_model {cfg['d_model']}, {cfg['num_layers']} layers -> {a.out}")


if __name__ == "__main__":
    main()
