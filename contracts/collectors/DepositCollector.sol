// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IDepositCollector} from "../interfaces/IDepositCollector.sol";

/// @title DepositCollector
/// @notice Base for collectors: only the escrow given at construction may call `collect`.
/// @dev The escrow address is an immutable, so the runtime code carries it: on a local chain where contracts
///      are placed at canonical addresses, construct with the escrow's final address.
abstract contract DepositCollector is IDepositCollector {
    /// @notice The escrow this collector delivers to.
    address public immutable ESCROW;

    /// @notice `collect` was called by someone other than the escrow.
    error DepositCollectorOnlyEscrow(address caller, address escrow);
    /// @notice The escrow address given at construction is zero.
    error DepositCollectorZeroEscrow();

    constructor(address escrow) {
        if (escrow == address(0)) revert DepositCollectorZeroEscrow();
        ESCROW = escrow;
    }

    modifier onlyEscrow() {
        if (msg.sender != ESCROW) revert DepositCollectorOnlyEscrow(msg.sender, ESCROW);
        _;
    }
}
