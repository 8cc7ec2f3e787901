// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {DepositCollector} from "./DepositCollector.sol";
import {IDepositCollector} from "../interfaces/IDepositCollector.sol";
import {IERC3009} from "../interfaces/IERC3009.sol";

/// @title ERC3009DepositCollector
/// @notice Gasless deposits: the payer signs an ERC-3009 `ReceiveWithAuthorization` to this collector and anyone
///         (typically the payee's node) relays `deposit`.
/// @dev The authorization nonce must be `keccak256(abi.encode(channelId, salt))`, which binds the payer's
///      signature to one channel: a relayer cannot route the funds into another channel. ERC-3009 requires
///      `msg.sender == to`, so tokens land here and are forwarded to the escrow in the same call.
///      collectorData = abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature).
contract ERC3009DepositCollector is DepositCollector {
    using SafeERC20 for IERC20;

    constructor(address escrow) DepositCollector(escrow) {}

    /// @inheritdoc IDepositCollector
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
        override
        onlyEscrow
    {
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(collectorData, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IERC3009(token).receiveWithAuthorization(payer, address(this), amount, validAfter, validBefore, nonce, signature);
        IERC20(token).safeTransfer(msg.sender, amount);
    }
}
