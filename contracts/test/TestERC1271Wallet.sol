// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title TestERC1271Wallet
/// @notice Test-only smart-contract wallet: a signature is valid iff the `owner` EOA signed the
///         hash directly (no wallet-specific re-hashing), and the owner can make arbitrary calls.
/// @dev Deliberately minimal: the same owner signature is valid for every wallet with that owner.
contract TestERC1271Wallet is IERC1271 {
    /// @dev ERC-1271 failure value.
    bytes4 private constant _INVALID_SIGNATURE = 0xffffffff;

    /// @notice The EOA whose ECDSA signatures this wallet accepts and who may call `execute`.
    // solhint-disable-next-line immutable-vars-naming
    address public immutable owner;

    /// @notice `caller` is not the wallet owner.
    error NotOwner(address caller);

    /// @notice Deploys a wallet controlled by `owner_`.
    constructor(address owner_) {
        owner = owner_;
    }

    /// @notice Accepts ETH so the wallet can forward value in `execute`.
    receive() external payable {}

    /// @inheritdoc IERC1271
    /// @dev Never reverts: any malformed or foreign signature yields 0xffffffff.
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4 magicValue) {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(hash, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == owner) return IERC1271.isValidSignature.selector;
        return _INVALID_SIGNATURE;
    }

    /// @notice Calls `target` with `value` wei and `data` as the wallet; bubbles up any revert.
    function execute(address target, uint256 value, bytes calldata data) external returns (bytes memory result) {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        bool success;
        (success, result) = target.call{value: value}(data);
        if (!success) {
            // Re-throw the callee's revert data unchanged so tests can match its custom error.
            assembly ("memory-safe") {
                revert(add(result, 0x20), mload(result))
            }
        }
    }
}
