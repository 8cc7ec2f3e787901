// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IDepositCollector
/// @notice A pluggable way to pull a payer's tokens into the escrow (ERC-3009, EIP-2612 permit, ...).
/// @dev Called only by the escrow during `deposit`. A collector MUST deliver exactly `amount` of `token` to
///      its caller (the escrow), which checks its own balance afterwards. A collector MUST bind the payer's
///      authorization to `channelId`, so nobody can redirect a payer's funds into a channel of their choosing.
interface IDepositCollector {
    /// @notice Moves `amount` of `token` from `payer` to the calling escrow for channel `channelId`.
    /// @param payer The owner of the tokens (the channel's payer).
    /// @param token The ERC-20 to move.
    /// @param amount The exact amount to deliver.
    /// @param channelId The channel being funded; bound into the payer's authorization.
    /// @param collectorData Collector-specific authorization data.
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external;
}
