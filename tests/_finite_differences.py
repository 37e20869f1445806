"""Central finite differences of a model's training loss, the oracle of the
gradient tests of every model that the training loop drives (attention
pooling, encoder-decoder, ConvLSTM regressor): ``loss_and_grad`` is checked
entry by entry against (L(p + eps) - L(p - eps)) / (2 eps) in float64."""

EPS = 1e-6


def check_loss_gradient(model, grads, loss_args, picks, atol=1e-7, rtol=1e-5):
    """Assert |grads[name][i] - central difference| <= atol + rtol * |central difference|.

    ``loss_args`` are the positional and keyword arguments of
    ``model.loss_and_grad`` (``(args, kwargs)``) that ``grads`` came from;
    ``picks(name, size)`` names the flat entries of each parameter to check.
    """
    args, kwargs = loss_args
    for name, param in model.params.items():
        flat = param.reshape(-1)
        for i in picks(name, flat.size):
            old = flat[i]
            flat[i] = old + EPS
            up, _ = model.loss_and_grad(*args, **kwargs, need_grad=False)
            flat[i] = old - EPS
            down, _ = model.loss_and_grad(*args, **kwargs, need_grad=False)
            flat[i] = old
            numeric = (up - down) / (2 * EPS)
            analytic = grads[name].reshape(-1)[i]
            assert abs(analytic - numeric) <= atol + rtol * abs(numeric), (name, i, analytic,
                                                                           numeric)
