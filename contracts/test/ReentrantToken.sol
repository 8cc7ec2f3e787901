// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title ReentrantToken
/// @notice Test-only 6-decimal token with a one-shot hook: once armed with `setHook`, the next
///         balance change (transfer, mint or burn) calls `target` with `data` after the balances
///         move, records the outcome, and disarms. A failing hook call never reverts the transfer.
/// @dev Used to prove that reentering the escrow mid-transfer fails with ReentrancyGuardReentrantCall:
///      arm the hook with the escrow call, run the escrow action, then read `lastHookSuccess` and
///      `lastHookReturn` (the revert data when the call failed).
contract ReentrantToken is ERC20 {
    /// @notice Contract the armed hook will call; address(0) when disarmed.
    address public hookTarget;
    /// @notice Calldata the armed hook will send to `hookTarget`.
    bytes public hookData;
    /// @notice Whether the most recent hook call succeeded.
    bool public lastHookSuccess;
    /// @notice Return data (or revert data) of the most recent hook call.
    bytes public lastHookReturn;
    /// @notice Number of hook calls made so far.
    uint256 public hookCallCount;

    /// @notice The hook called `target`; `success` and `returnData` are its outcome.
    event HookCalled(address indexed target, bool success, bytes returnData);

    /// @notice Deploys "Reentrant Token" (RENT).
    constructor() ERC20("Reentrant Token", "RENT") {}

    /// @notice Mints `amount` to `to`; open to anyone (test token).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Arms the hook to call `target` with `data` on the next balance change; address(0) disarms.
    function setHook(address target, bytes calldata data) external {
        hookTarget = target;
        hookData = data;
    }

    /// @notice 6 decimals, like USDC.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @dev Moves balances first, then fires the armed hook once.
    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);

        address target = hookTarget;
        if (target == address(0)) return;
        // Disarm before the call: a transfer made by the hook itself finds no hook, so no recursion.
        bytes memory data = hookData;
        delete hookTarget;
        delete hookData;

        // solhint-disable-next-line avoid-low-level-calls
        (bool success, bytes memory returnData) = target.call(data);
        lastHookSuccess = success;
        lastHookReturn = returnData;
        ++hookCallCount;
        emit HookCalled(target, success, returnData);
    }
}
