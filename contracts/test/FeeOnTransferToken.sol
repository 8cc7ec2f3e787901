// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title FeeOnTransferToken
/// @notice Test-only 6-decimal token that burns 1% (at least 1 unit) of every transfer, so the
///         recipient receives less than `value`. Mints and burns are fee-free. Has EIP-2612 permit
///         (EIP-712 domain {name: "Fee On Transfer Token", version: "1"}). Minting is open to anyone.
contract FeeOnTransferToken is ERC20, ERC20Permit {
    /// @notice Fee in basis points burned from every transfer.
    uint256 public constant FEE_BPS = 100;

    /// @notice Deploys "Fee On Transfer Token" (FOT).
    constructor() ERC20("Fee On Transfer Token", "FOT") ERC20Permit("Fee On Transfer Token") {}

    /// @notice Mints `amount` to `to`; open to anyone (test token).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice 6 decimals, like USDC.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Fee burned when `value` is transferred: 1%, at least 1 unit when value > 0.
    function feeOf(uint256 value) public pure returns (uint256 fee) {
        if (value == 0) return 0;
        fee = (value * FEE_BPS) / 10_000;
        if (fee == 0) fee = 1;
    }

    /// @dev Transfers (not mints or burns) deliver `value - fee` to `to` and burn `fee` from `from`.
    function _update(address from, address to, uint256 value) internal override {
        if (from == address(0) || to == address(0) || value == 0) {
            super._update(from, to, value);
            return;
        }
        // Check the whole amount up front so the error reports the real shortfall.
        uint256 balance = balanceOf(from);
        if (balance < value) revert ERC20InsufficientBalance(from, balance, value);
        uint256 fee = feeOf(value);
        // fee <= value: fee is 1% of value, or 1 when value >= 1.
        super._update(from, to, value - fee);
        super._update(from, address(0), fee);
    }
}
