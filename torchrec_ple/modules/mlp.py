"""Multi-layer perceptrons: a plain one and a stack of independent ones run as batched ops."""

import math
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

# (parameter, index): ``parameter[index]`` is one MLP's weight as ``(in, out)`` or bias as
# ``(out,)``. Heads that keep several experts in one tensor describe their layout this way.
ParamSlice = Tuple[nn.Parameter, Tuple[Union[int, slice], ...]]

_ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}

ACTIVATIONS: Tuple[str, ...] = tuple(_ACTIVATIONS)


def make_activation(name: str) -> nn.Module:
    """Returns the activation module called ``name``, one of ``ACTIVATIONS``."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}"
        ) from None


def make_dropout(p: float) -> nn.Module:
    """Returns ``nn.Dropout(p)``, or ``nn.Identity`` for ``p == 0`` (no mask is drawn)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return nn.Dropout(p) if p > 0.0 else nn.Identity()


def check_dims(name: str, dims: List[int], allow_empty: bool = False) -> List[int]:
    """Validates a list of layer widths and returns it as a new list."""
    dims = list(dims)
    if not dims and not allow_empty:
        raise ValueError(f"{name} must list at least one layer width, got []")
    if any(int(d) != d or d < 1 for d in dims):
        raise ValueError(f"{name} must be positive integers, got {dims}")
    return [int(d) for d in dims]


class MLP(nn.Module):
    """A stack of ``Linear -> activation -> dropout`` layers.

    Args:
        in_features (int): input width ``D``.
        hidden_dims (List[int]): width of each layer; empty gives the identity.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout probability after each activated layer. Default: 0.0.
        activate_last (bool): apply activation and dropout after the last layer too; False
            makes the last layer a plain linear output layer. Default: True.

    Example::

        mlp = MLP(16, [32, 8])
        y = mlp(torch.randn(4, 16))  # (4, 8)
    """

    def __init__(
        self,
        in_features: int,
        hidden_dims: List[int],
        activation: str = "relu",
        dropout: float = 0.0,
        activate_last: bool = True,
    ) -> None:
        super().__init__()
        hidden_dims = check_dims("hidden_dims", hidden_dims, allow_empty=True)
        layers: List[nn.Module] = []
        width = in_features
        for i, out in enumerate(hidden_dims):
            layers.append(nn.Linear(width, out))
            if activate_last or i < len(hidden_dims) - 1:
                layers.append(make_activation(activation))
                layers.append(make_dropout(dropout))
            width = out
        self._layers = nn.Sequential(*layers)
        self._output_dim = width

    @property
    def output_dim(self) -> int:
        """Width of the output."""
        return self._output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): ``(B, in_features)``.

        Returns:
            torch.Tensor: ``(B, output_dim)``.
        """
        return self._layers(x)


class StackedLinear(nn.Module):
    """``num`` independent linear layers held in one tensor and run as one batched op.

    The weight is stored as ``(in_features, num, out_features)`` so that a shared input is
    one ``addmm`` against the free view ``(in_features, num * out_features)``, and per-layer
    inputs are one ``baddbmm`` against the (strided) view ``(num, in_features,
    out_features)``. Layer ``i``'s weight is ``weight[:, i, :]`` and its bias ``bias[i]``.
    Each layer is initialised like ``nn.Linear`` (uniform in ``±1/sqrt(in_features)``).

    Args:
        num (int): number of layers ``E``.
        in_features (int): input width ``D``.
        out_features (int): output width ``H``.
        bias (bool): add a learned bias. Default: True.
        shared_input (bool): forward takes one input ``(B, D)`` shared by all layers;
            otherwise it takes one input per layer, ``(E, B, D)``. Default: False.

    Example::

        lin = StackedLinear(3, 16, 8, shared_input=True)
        y = lin(torch.randn(4, 16))  # (3, 4, 8)
    """

    def __init__(
        self,
        num: int,
        in_features: int,
        out_features: int,
        bias: bool = True,
        shared_input: bool = False,
    ) -> None:
        super().__init__()
        if num < 1 or in_features < 1 or out_features < 1:
            raise ValueError(
                f"StackedLinear needs positive sizes, got num={num}, "
                f"in_features={in_features}, out_features={out_features}"
            )
        self._num = num
        self._in_features = in_features
        self._out_features = out_features
        self._shared_input = shared_input
        self.weight = nn.Parameter(torch.empty(in_features, num, out_features))
        if bias:
            self.bias: Optional[nn.Parameter] = nn.Parameter(torch.empty(num, out_features))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialises every layer like ``nn.Linear``."""
        bound = 1.0 / math.sqrt(self._in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def parameter_slices(self, i: int) -> List[ParamSlice]:
        """Where layer ``i`` lives: ``[(weight, idx)]`` plus ``(bias, idx)`` if any."""
        slices: List[ParamSlice] = [(self.weight, (slice(None), i, slice(None)))]
        if self.bias is not None:
            slices.append((self.bias, (i, slice(None))))
        return slices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): ``(B, D)`` with ``shared_input``, else ``(E, B, D)``.

        Returns:
            torch.Tensor: ``(E, B, H)``.
        """
        bias = self.bias
        if self._shared_input:
            weight = self.weight.view(self._in_features, self._num * self._out_features)
            if bias is not None:
                y = torch.addmm(bias.view(-1), x, weight)
            else:
                y = torch.mm(x, weight)
            return y.view(-1, self._num, self._out_features).transpose(0, 1)
        weight = self.weight.permute(1, 0, 2)
        if bias is not None:
            return torch.baddbmm(bias.unsqueeze(1), x, weight)
        return torch.bmm(x, weight)


class StackedMLP(nn.Module):
    """``num_mlps`` independent MLPs of the same shape, evaluated with one batched op per layer.

    Layer ``l`` of all MLPs is one ``StackedLinear``; there is no Python loop over MLPs.
    MLP ``i`` computes exactly what ``MLP(in_features, hidden_dims, ...)`` would with weights
    ``layer.weight[:, i, :]`` and biases ``layer.bias[i]`` (see ``mlp_parameter_slices``).

    Args:
        num_mlps (int): number of MLPs ``E``.
        in_features (int): input width ``D``.
        hidden_dims (List[int]): width of each layer; empty gives the identity.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout probability after each activated layer. Default: 0.0.
        activate_last (bool): activate (and drop out) after the last layer too. Default: True.
        shared_input (bool): forward takes one input ``(B, D)`` fed to every MLP (the first
            layer is then a single matmul); otherwise one input per MLP, ``(E, B, D)``.
            Default: True.

    Example::

        experts = StackedMLP(4, 16, [32, 8])
        y = experts(torch.randn(5, 16))  # (4, 5, 8)
    """

    def __init__(
        self,
        num_mlps: int,
        in_features: int,
        hidden_dims: List[int],
        activation: str = "relu",
        dropout: float = 0.0,
        activate_last: bool = True,
        shared_input: bool = True,
    ) -> None:
        super().__init__()
        if num_mlps < 1:
            raise ValueError(f"num_mlps must be at least 1, got {num_mlps}")
        hidden_dims = check_dims("hidden_dims", hidden_dims, allow_empty=True)
        self._num_mlps = num_mlps
        self._shared_input = shared_input
        self._activate_last = activate_last
        layers: List[nn.Module] = []
        width = in_features
        for i, out in enumerate(hidden_dims):
            layers.append(StackedLinear(num_mlps, width, out, shared_input=shared_input and i == 0))
            width = out
        self._layers = nn.ModuleList(layers)
        self._num_layers = len(layers)
        self._activation = make_activation(activation)
        self._dropout = make_dropout(dropout)
        self._output_dim = width

    @property
    def output_dim(self) -> int:
        """Width of each MLP's output."""
        return self._output_dim

    @property
    def num_mlps(self) -> int:
        """Number of MLPs."""
        return self._num_mlps

    def mlp_parameter_slices(self, i: int) -> List[ParamSlice]:
        """Where MLP ``i`` lives: ``(param, idx)`` for weight then bias of each layer."""
        slices: List[ParamSlice] = []
        for layer in self._layers:
            assert isinstance(layer, StackedLinear)
            slices.extend(layer.parameter_slices(i))
        return slices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): ``(B, D)`` with ``shared_input``, else ``(E, B, D)``.

        Returns:
            torch.Tensor: ``(E, B, output_dim)``.
        """
        if self._num_layers == 0 and self._shared_input:
            return x.unsqueeze(0).expand(self._num_mlps, -1, -1)
        h = x
        for i, layer in enumerate(self._layers):
            h = layer(h)
            if self._activate_last or i < self._num_layers - 1:
                h = self._dropout(self._activation(h))
        return h
