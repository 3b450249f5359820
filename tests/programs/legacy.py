"""
A two-layer network trained with manual gradient steps, written in the pre-1.0
PyTorch style that still fills old repositories: tensor types picked with
`dtype = torch.cuda.FloatTensor`, the CUDA default tensor type, Variables, `.type(...)` casts and `.data` updates.
"""
import torch
from torch.autograd import Variable

if torch.cuda.is_available():
    torch.set_default_tensor_type("torch.cuda.FloatTensor")
dtype = torch.cuda.FloatTensor
long_dtype = torch.cuda.LongTensor
torch.manual_seed(1)

N, D_in, H, D_out = 32, 20, 50, 4

x = Variable(torch.randn(N, D_in).type(dtype), requires_grad=False)
labels = torch.LongTensor(N).random_(0, D_out)
labels = Variable(labels.type(long_dtype))

w1 = Variable(torch.randn(D_in, H).type(dtype) * 0.1, requires_grad=True)
w2 = Variable(torch.randn(H, D_out).type(dtype) * 0.1, requires_grad=True)
b2 = Variable(torch.zeros(D_out), requires_grad=True)  # a CUDA tensor: the default type says so
assert isinstance(b2.data, torch.cuda.FloatTensor)

learning_rate = 0.5
for t in range(40):
    h = x.mm(w1).clamp(min=0)
    scores = h.mm(w2) + b2
    loss = torch.nn.functional.cross_entropy(scores, labels)
    if t % 5 == 0:
        print(t, "%.6f" % loss.data.item())
    loss.backward()
    for param in (w1, w2, b2):
        param.data -= learning_rate * param.grad.data
        param.grad.data.zero_()

# evaluation in the old style too
test_x = Variable(torch.randn(8, D_in)).cuda()
assert isinstance(test_x.data, torch.cuda.FloatTensor)
pred = test_x.mm(w1).clamp(min=0).mm(w2).add(b2).data.max(1)[1]
assert isinstance(pred, torch.cuda.LongTensor)
print("predictions", pred.cpu().numpy().tolist())
correct = scores.data.max(1)[1].eq(labels.data).sum()
print("train accuracy %.3f" % (float(correct) / N))
