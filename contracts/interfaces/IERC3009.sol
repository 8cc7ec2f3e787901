// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IERC3009
/// @notice The part of EIP-3009 (transfer with authorization) the deposit collector uses.
interface IERC3009 {
    /// @notice Transfers `value` from `from` to the caller (`to`) under `from`'s signed authorization.
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external;
}
