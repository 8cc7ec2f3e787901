// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

import {DepositCollector} from "./DepositCollector.sol";
import {IDepositCollector} from "../interfaces/IDepositCollector.sol";

/// @title PermitDepositCollector
/// @notice Deposits from an ERC-20 allowance given to this collector, either by an EIP-2612 `permit` carried in
///         the same call (gasless for the payer) or by a prior `approve` (any ERC-20, no-bool tokens included).
/// @dev An allowance alone binds no channel, so every deposit also carries the payer's EIP-712
///      `DepositAuthorization(bytes32 channelId,uint256 amount,bytes32 nonce,uint256 deadline)` under this
///      collector's domain ("Tollway Permit Collector", "1"); ERC-1271 payers are supported.
///      collectorData = abi.encode(PermitDepositData), with permitDeadline == 0 meaning "no permit, use
///      the existing allowance".
contract PermitDepositCollector is DepositCollector, EIP712 {
    using SafeERC20 for IERC20;

    /// @notice EIP-712 type hash of the payer's deposit authorization.
    bytes32 public constant DEPOSIT_AUTHORIZATION_TYPEHASH =
        keccak256("DepositAuthorization(bytes32 channelId,uint256 amount,bytes32 nonce,uint256 deadline)");

    /// @notice What collectorData carries.
    struct PermitDepositData {
        bytes32 nonce; // payer-chosen, single use
        uint256 deadline; // of the deposit authorization
        bytes authorization; // payer's signature of getDepositAuthorizationDigest(...)
        uint256 permitDeadline; // 0 = no permit
        uint8 v;
        bytes32 r;
        bytes32 s;
    }

    /// @notice Whether a payer's authorization nonce has been used.
    mapping(address payer => mapping(bytes32 nonce => bool)) public authorizationUsed;

    /// @notice The deposit authorization's deadline has passed.
    error PermitDepositCollectorExpired(uint256 deadline, uint256 timestamp);
    /// @notice The deposit authorization nonce was already used by this payer.
    error PermitDepositCollectorNonceUsed(address payer, bytes32 nonce);
    /// @notice The deposit authorization is not signed by the payer.
    error PermitDepositCollectorInvalidSignature(address payer, bytes32 digest);

    /// @notice The payer revoked one of its deposit authorizations before any deposit used it.
    event DepositAuthorizationCanceled(address indexed payer, bytes32 indexed nonce);

    constructor(address escrow) DepositCollector(escrow) EIP712("Tollway Permit Collector", "1") {}

    /// @notice Revokes the caller's deposit authorization `nonce` (signed, handed out, not used yet): no deposit
    ///         can use it afterwards. The allowance is the token's and stays as it is.
    function cancelAuthorization(bytes32 nonce) external {
        if (authorizationUsed[msg.sender][nonce]) revert PermitDepositCollectorNonceUsed(msg.sender, nonce);
        authorizationUsed[msg.sender][nonce] = true;
        emit DepositAuthorizationCanceled(msg.sender, nonce);
    }

    /// @notice EIP-712 digest the payer signs to authorize a deposit into `channelId`.
    function getDepositAuthorizationDigest(bytes32 channelId, uint256 amount, bytes32 nonce, uint256 deadline)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(DEPOSIT_AUTHORIZATION_TYPEHASH, channelId, amount, nonce, deadline)));
    }

    /// @inheritdoc IDepositCollector
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
        override
        onlyEscrow
    {
        PermitDepositData memory d = abi.decode(collectorData, (PermitDepositData));
        if (block.timestamp > d.deadline) revert PermitDepositCollectorExpired(d.deadline, block.timestamp);
        if (authorizationUsed[payer][d.nonce]) revert PermitDepositCollectorNonceUsed(payer, d.nonce);
        bytes32 digest = getDepositAuthorizationDigest(channelId, amount, d.nonce, d.deadline);
        if (!SignatureChecker.isValidSignatureNow(payer, digest, d.authorization)) {
            revert PermitDepositCollectorInvalidSignature(payer, digest);
        }
        authorizationUsed[payer][d.nonce] = true;

        // The permit only when the allowance falls short: it sets the allowance to `amount`, which would
        // overwrite a larger approval that other authorized deposits of this payer count on.
        if (d.permitDeadline != 0 && IERC20(token).allowance(payer, address(this)) < amount) {
            // A permit can be front-run (someone submits it first); the allowance it granted is still there,
            // so a failed permit is ignored and transferFrom decides.
            try IERC20Permit(token).permit(payer, address(this), amount, d.permitDeadline, d.v, d.r, d.s) {} catch {}
        }
        IERC20(token).safeTransferFrom(payer, msg.sender, amount);
    }
}
