"""Build a tiny causal language model and tokenizer from configs (random weights,
nothing downloaded) and save them with ``save_pretrained``, as a hub checkpoint
directory would look. Used by the transformers drivers:

    from hf_tiny import make_checkpoint
    path = make_checkpoint(directory)
"""
import os

VOCAB = [f"w{i}" for i in range(94)] + ["[UNK]", "[PAD]", "[BOS]", "[EOS]"]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="[BOS]", eos_token="[EOS]")


def make_checkpoint(directory, kind="llama"):
    """Save a 2-layer model of ``kind`` (llama or gpt2) plus a tokenizer in ``directory``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    ids = dict(vocab_size=len(VOCAB), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, **ids))
    else:
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                             hidden_size=32, intermediate_size=64, max_position_embeddings=64, **ids))
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
