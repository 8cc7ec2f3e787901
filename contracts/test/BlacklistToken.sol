// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title BlacklistToken
/// @notice Test-only 6-decimal token with a USDC-style blacklist: any transfer, mint or burn from
///         or to a blacklisted account reverts. Has EIP-2612 permit (EIP-712 domain
///         {name: "Blacklist Token", version: "1"}). Minting and blacklisting are open to anyone.
contract BlacklistToken is ERC20, ERC20Permit {
    /// @notice Whether `account` is blacklisted.
    mapping(address account => bool blacklisted) public isBlacklisted;

    /// @notice `account` was added to the blacklist.
    event AccountBlacklisted(address indexed account);
    /// @notice `account` was removed from the blacklist.
    event AccountUnblacklisted(address indexed account);

    /// @notice `account` is blacklisted and cannot send or receive.
    error Blacklisted(address account);

    /// @notice Deploys "Blacklist Token" (BLT).
    constructor() ERC20("Blacklist Token", "BLT") ERC20Permit("Blacklist Token") {}

    /// @notice Mints `amount` to `to`; open to anyone (test token).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Blacklists `account`; open to anyone (test token).
    function blacklist(address account) external {
        isBlacklisted[account] = true;
        emit AccountBlacklisted(account);
    }

    /// @notice Removes `account` from the blacklist; open to anyone (test token).
    function unblacklist(address account) external {
        isBlacklisted[account] = false;
        emit AccountUnblacklisted(account);
    }

    /// @notice 6 decimals, like USDC.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @dev Every balance change passes here; refuse it if either side is blacklisted.
    function _update(address from, address to, uint256 value) internal override {
        if (isBlacklisted[from]) revert Blacklisted(from);
        if (isBlacklisted[to]) revert Blacklisted(to);
        super._update(from, to, value);
    }
}
