// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title NoReturnToken
/// @notice Test-only USDT-like token: `transfer`, `transferFrom` and `approve` return nothing,
///         so callers must use SafeERC20. 6 decimals; minting is open to anyone. Reverts on
///         insufficient balance or allowance; an allowance of type(uint256).max is never spent.
// ERC-20 getter names are fixed by the standard.
// solhint-disable const-name-snakecase
contract NoReturnToken {
    /// @notice Token name.
    string public constant name = "No Return Token";
    /// @notice Token symbol.
    string public constant symbol = "NRT";
    /// @notice 6 decimals, like USDT.
    uint8 public constant decimals = 6;
    // solhint-enable const-name-snakecase

    /// @notice Total tokens in existence.
    uint256 public totalSupply;
    /// @notice Balance of each holder.
    mapping(address holder => uint256 balance) public balanceOf;
    /// @notice Remaining allowance of `spender` over `owner`'s tokens.
    mapping(address owner => mapping(address spender => uint256 amount)) public allowance;

    /// @notice ERC-20 Transfer event (mint emits from address(0)).
    event Transfer(address indexed from, address indexed to, uint256 value);
    /// @notice ERC-20 Approval event.
    event Approval(address indexed owner, address indexed spender, uint256 value);

    /// @notice `sender` holds `balance`, less than the `needed` amount.
    error NoReturnTokenInsufficientBalance(address sender, uint256 balance, uint256 needed);
    /// @notice `spender` may spend `allowance` of `owner`'s tokens, less than `needed`.
    error NoReturnTokenInsufficientAllowance(address owner, address spender, uint256 allowance, uint256 needed);

    /// @notice Mints `amount` to `to`; open to anyone (test token).
    function mint(address to, uint256 amount) external {
        totalSupply += amount;
        // Cannot overflow: a balance never exceeds totalSupply, which was just checked.
        unchecked {
            balanceOf[to] += amount;
        }
        emit Transfer(address(0), to, amount);
    }

    /// @notice Moves `value` from the caller to `to`. Returns nothing (USDT-style).
    function transfer(address to, uint256 value) external {
        _transfer(msg.sender, to, value);
    }

    /// @notice Moves `value` from `from` to `to` using the caller's allowance. Returns nothing.
    function transferFrom(address from, address to, uint256 value) external {
        uint256 current = allowance[from][msg.sender];
        if (current != type(uint256).max) {
            if (current < value) revert NoReturnTokenInsufficientAllowance(from, msg.sender, current, value);
            // Cannot underflow: checked just above.
            unchecked {
                allowance[from][msg.sender] = current - value;
            }
        }
        _transfer(from, to, value);
    }

    /// @notice Sets the caller's allowance for `spender` to `value`. Returns nothing.
    function approve(address spender, uint256 value) external {
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
    }

    /// @dev Single value-movement path for transfer and transferFrom.
    function _transfer(address from, address to, uint256 value) private {
        uint256 balance = balanceOf[from];
        if (balance < value) revert NoReturnTokenInsufficientBalance(from, balance, value);
        // Cannot underflow: checked above. Cannot overflow: sum of balances equals totalSupply.
        unchecked {
            balanceOf[from] = balance - value;
            balanceOf[to] += value;
        }
        emit Transfer(from, to, value);
    }
}
